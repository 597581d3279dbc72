"""Train: the pure step and the loop that drives it on devices.

`step` (TrainState, optimizers, the pure `train_step` and `predict`
functions), `loop` (the one training loop: resume, checkpoint, log),
`placement` (jit or pmap over a mesh), `sharding` (mesh, FSDP rule, batch
placement), `packing` (one host->device buffer per dtype), `prefetch`,
`preemption` (SIGTERM/SIGINT at a step boundary), `predict` (outputs over
a split), `metric_writers`.

May import: the top-level base modules, `mtkd.store`, `mtkd.methods`,
`mtkd.models` and `mtkd.data`.
"""
