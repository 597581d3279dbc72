"""Store: what a run leaves on disk, and where.

`layout` names every path of a workdir (the one place that spells them),
`cache` the teacher-logit caches, `checkpoint` the Orbax checkpoints,
`fingerprint` the content hashes that tie caches and checkpoints to the
parameters and data that produced them, `runinfo` the run's records.

May import: the top-level base modules (`errors`, `registry`,
`configs_util`, `distributed`) only.
"""
