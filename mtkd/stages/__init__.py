"""Stages: the units a run is made of, and what they share.

`base` (the `Run` every stage shares and the `Stage` interface: what it
writes, its settings fingerprint, run/resume/skip), `plan` (the stage plan
and every check made before compute), `source`, `teachers` (layouts,
members, cached and online delivery), `teacher` (the stage training one),
`caching`,
`student` (student stages and the baseline), `report` (evaluation and
results), `verify` (`--verify`: every artifact of a workdir, checked
without training). `mtkd.experiment.run` drives them in order.

May import: every other `mtkd` package and the top-level base modules.
"""
