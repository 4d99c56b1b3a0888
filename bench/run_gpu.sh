#!/usr/bin/env bash
# Run a group of the single-GPU benchmarks one after another, each under its own time limit, logging to $LOG_DIR.
#   LOG_DIR=/tmp/logs bash bench/run_gpu.sh lm long_context quant holo rollout retnphi retention data generate generate_1b generate_retnphi decode_profile serve_load gpu_tests
#   LIMIT=560 bash bench/run_gpu.sh quant_nf4_cells | generate_125m_cells | generate_heads_cells
#   LIMIT=560 bash bench/run_gpu.sh generate_retnphi_cells | generate_fused_quant | generate_startup | generate_int8_cells
#   LIMIT=590 bash bench/run_gpu.sh verify_profile
#   SHARD=0/3 LIMIT=560 bash bench/run_gpu.sh gpu_tests   (then 1/3 and 2/3: the gpu-marked tests in three calls)
#   (RetNPhi and verify_profile read /tmp/pysrc: docs/BENCHMARKS.md, "Retention vs a standard transformer")
# Each benchmark's table is its log's last lines; a group never stops at a failed member.
# PARSE_ONLY=1: each bench./train. command's arguments parsed by its module's argparse and nothing run
# (bench/parse_only.py; a train command's key=value overrides are not checked against its config); others skipped;
# logs to a fresh temporary folder.
set -uo pipefail
LOG_DIR=${LOG_DIR:-runs/gpu_benches}
[ -n "${PARSE_ONLY:-}" ] && LOG_DIR=$(mktemp -d)  # a parse check never overwrites a benchmark's log
LIMIT=${LIMIT:-240}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1
for b in "$@"; do
  case $b in
    lm) cmd="python -m bench.lm --forms chunkwise,pallas --transformer" ;;
    long_context) cmd="python -m bench.long_context --forms chunkwise,pallas --attention-impls cudnn,xla --baseline transformer,mixer" ;;
    quant) cmd="python -m bench.quant_kernels --shapes 4096x4096,4096x11008 --target-s 0.1" ;;
    holo) cmd="python -m bench.holo" ;;
    rollout) cmd="python -m bench.rollout --budget-s 15" ;;
    retnphi) cmd="python -m bench.retnphi --sizes 125m,1b" ;;
    retention) cmd="python -m bench.retention" ;;
    data) cmd="python -m bench.data --mb 1024 --batch-size 32 --seq-len 2048" ;;
    generate) cmd="python -m bench.generate --configs configs/lm_125m.py --batches 1,8,64,256 --quants none,int8,int4 --decode-impls jnp,fused,fused_pallas --count-ops --extra-unrolls 4 --bpb-bytes 1048576 --set data.source=files --set data.paths=/tmp/pysrc" ;;
    generate_1b) cmd="python -m bench.generate --configs configs/lm_1b.py --batches 1,64 --quants none,int8 --decode-impls jnp,fused_pallas --steps 128 --copy-mib 1024" ;;
    generate_retnphi) cmd="python -m bench.generate_retnphi --size 1b --batches 1,64 --steps 128 --data-paths /tmp/pysrc" ;;
    decode_profile) cmd="python -m bench.decode_profile --config configs/lm_125m.py --decode-impls jnp,fused_pallas --batch 1 --steps 64 --out $LOG_DIR/decode_profile" ;;
    serve_load) cmd="python -m bench.serve_load --config configs/lm_125m.py --decode-impl fused_pallas --clients 16 --requests 128 --slots 8 --chunk 32 --max-tokens 256" ;;
    # all of them took ~17 min on one H200, summed over stop 35's shards: past a 10-minute call; SHARD=K/N runs slice K
    gpu_tests) cmd="env JAX_PLATFORMS=cuda python -m pytest -m gpu -q -p no:cacheprovider${SHARD:+ --shard $SHARD}" ;;
    # the cells issue 22's and issue 15's matrices still lack (docs/BENCHMARKS.md, stop 32); give them LIMIT=560
    quant_nf4_cells) cmd="python -m bench.quant_mosaic --shapes 4096x4096,11008x4096,4096x11008 --methods nf4 --batches 1,4,16,32,64,256 --keep 1 --target-s 0.02 --budget-s 520" ;;
    generate_125m_cells) cmd="python -m bench.generate --configs configs/lm_125m.py --batches 8,64,256 --quants none,int8,int4 --decode-impls jnp --no-old --no-token --steps 128 --reps 2" ;;
    generate_heads_cells) cmd="python -m bench.generate --configs configs/lm_125m.py,configs/lm_1b.py --heads 3 --batches 1,8,64,256 --quants none --decode-impls jnp --no-old --no-token --steps 64 --reps 2" ;;
    generate_retnphi_cells) cmd="python -m bench.generate_retnphi --size 1b --batches 256,64 --quants none,int4 --spec-heads 3 --head-steps 200 --data-paths /tmp/pysrc --no-old --steps 64 --reps 2" ;;
    # the fused step over quantized weights (fused.quantize_fused: half the quantized calls a layer)
    generate_fused_quant)
      cmd="python -m bench.generate --configs configs/lm_125m.py --batches 1,8,64 --quants none,int4,int8"
      cmd+=" --decode-impls jnp,fused_pallas --no-old --no-token --steps 128 --reps 2" ;;
    # start-up after the Hopper form's jitted entry (stop 34: 164 / 187 s for int4 jnp at batch 8 / 64), and the
    # fused quantized step at batch 64 beside the module engine in one process
    # (JAX_LOG_COMPILES: each trace, lowering and compile with its seconds, in the log: where a start-up goes)
    generate_startup)
      cmd="JAX_LOG_COMPILES=1 python -m bench.generate --configs configs/lm_125m.py --batches 8,64 --quants none,int4"
      cmd+=" --decode-impls jnp,fused_pallas --no-old --no-token --steps 128 --reps 2" ;;
    # int8 through today's table (Hopper form from batch 8 at shapes of 2048 and up) on the ~1B LM and RetNPhi;
    # RetNPhi's process also times its token decoder and its bf16 engine at batch 256 side by side
    generate_int8_cells)
      cmd="python -m bench.generate --configs configs/lm_1b.py --batches 64,256 --quants none,int8 --decode-impls jnp"
      cmd+=" --no-old --no-token --steps 64 --reps 2; python -m bench.generate_retnphi --size 1b --batches 256,64"
      cmd+=" --quants none,int8 --no-old --steps 64 --reps 2 --bytes-per-token 3.88" ;;
    # issue 15's like-for-like verify-pass profile: one trained 125M run with 3 heads (~4 min), profiled and timed
    verify_profile)
      cmd="python -m train.lm --config configs/lm_125m.py --workdir /tmp/r125 data.source=files"
      cmd+=" data.paths=/tmp/pysrc model.extra_heads=3 train.steps=1200 train.warmup_steps=100 train.lr=1e-3"
      cmd+=" && python -m bench.decode_profile --run /tmp/r125 --decode-impls jnp --speculative --batch 1"
      cmd+=" --steps 64 --calls 2 && python -m bench.generate --run /tmp/r125 --batches 1,8 --quants none"
      cmd+=" --decode-impls jnp,fused_pallas --no-old --no-token --steps 256 --reps 2" ;;
    *) echo "unknown benchmark $b"; continue ;;
  esac
  if [ -n "${PARSE_ONLY:-}" ]; then
    case $cmd in
      *"python -m bench."*|*"python -m train."*)
        cmd=${cmd//python -m bench./python -m bench.parse_only bench.}
        cmd=${cmd//python -m train./python -m bench.parse_only train.} ;;
      *) echo "=== $b: skipped under PARSE_ONLY (no bench./train. command)"; continue ;;
    esac
  fi
  echo "=== $b: $cmd ($(date -u +%FT%TZ), limit ${LIMIT}s)"
  start=$SECONDS
  # a shell, so a group may chain commands; -k: a run that saves on SIGTERM (train.lm) is killed 30 s later
  timeout -k 30 "$LIMIT" bash -c "$cmd" > "$LOG_DIR/$b.log" 2>&1
  echo "=== $b: rc=$? in $((SECONDS - start)) s"
  tail -n 25 "$LOG_DIR/$b.log"
done
