"""Methods: what a training step optimises.

`losses` (pure per-example losses), `tasks` (task kinds: supervised and KD
losses, metrics, evaluation, Delta_m), `objectives` (registered objectives
that turn model outputs into per-term `(sum, count)` pairs and declare what
they need), `weighting` (registered multi-task weightings that turn terms
into one gradient), `settings` (each plug-in's own config block).

May import: the top-level base modules (`errors`, `registry`,
`configs_util`) only.
"""
