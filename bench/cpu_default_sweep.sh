#!/bin/bash
# The sweep behind configs/lm.py (docs/BENCHMARKS.md, "The default CPU run, re-sized at equal CPU time"):
# candidate sizes, each given the steps that cost the same CPU time as the old default's 400 on two cores
# (CPU seconds per step measured on the 2-core machine: A 6.61, B 3.36, C 5.42, F 4.65; E estimated 8.1).
# Learning curves are device-independent (float32, chunkwise), so they run on one GPU: bash bench/cpu_default_sweep.sh OUT
OUT=${1:-${OUT:-runs/cpu_default_sweep}}; mkdir -p "$OUT"
M="model.d_model=128 model.num_layers=4 model.num_heads=2 model.qk_dim=128 model.v_dim=256 model.ffn_dim=512 data.batch_size=32"
C="model.d_model=192 model.num_layers=4 model.num_heads=4 model.qk_dim=192 model.v_dim=384 model.ffn_dim=768 data.batch_size=32"
F="model.d_model=128 model.num_layers=6 model.num_heads=2 model.qk_dim=128 model.v_dim=256 model.ffn_dim=512 data.batch_size=32"
E="model.d_model=192 model.num_layers=6 model.num_heads=4 model.qk_dim=192 model.v_dim=384 model.ffn_dim=768 data.batch_size=32"
declare -A R=( [A]="400|" [A3]="400|train.lr=3e-3" [B]="787|$M" [B4]="787|$M train.lr=4e-3" [C]="488|$C" [C3]="488|$C train.lr=3e-3" [F]="569|$F" [E]="326|$E" )
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.1
python -c "from hqf_jax import cli; from hqf_jax.data.catalog import load_corpus; print(load_corpus(cli.load_config('configs/lm.py',[]).data).summary())"
for k in "${!R[@]}"; do
  S=${R[$k]%%|*}; OV=${R[$k]#*|}; E6=$((S/8))
  ( python -m train.lm --workdir /tmp/sw/$k model.form=chunkwise train.steps=$S train.eval_every=$E6 train.ckpt_every=$E6 \
      train.sample_every=100000 train.log_every=50 $OV > /tmp/sw_$k.log 2>&1
    python -m eval.bpb --run /tmp/sw/$k --json > $OUT/sweep_$k.json 2>>/tmp/sw_$k.log
    cp /tmp/sw/$k/metrics.jsonl $OUT/sweep_${k}_metrics.jsonl; tail -3 /tmp/sw_$k.log > $OUT/sweep_${k}_tail.txt ) &
done
wait
for k in "${!R[@]}"; do echo "$k ${R[$k]%%|*} $(cat $OUT/sweep_$k.json)"; done
