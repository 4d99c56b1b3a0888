"""The names of the device mesh's axes: one source for the trainer's shardings and the models' shard_maps.

The batch is split over fsdp x data, fsdp-major (hqf_jax/trainer/sharding.py says why this order);
attention/retention heads, MLP width and vocabulary over tensor.
"""

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("fsdp", "data")
HEAD_AXIS = "tensor"
