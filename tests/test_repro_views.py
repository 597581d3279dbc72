"""experiments/repro_views.py's report on hand-written runs: accuracies,
the share of the online teacher's gain recovered (paired by seed), cache
bytes and the step-time ratio."""

import json

from experiments import repro_views as rv

ACC = {"fixed": (0.70, 0.60), "views_2": (0.78, 0.66),
       "views_8_mix": (0.79, 0.67), "online": (0.80, 0.68),
       # The long schedule is compared with its own fixed and online runs.
       "fixed_long": (0.72, 0.62), "views_1_long": (0.80, 0.70),
       "online_long": (0.82, 0.72)}
MB = {"fixed": 1, "views_2": 2, "views_8_mix": 3, "fixed_long": 1,
      "views_1_long": 1}


def _run(root, method, seed, shift):
  wd = root / "views" / f"{method}_s{seed}"
  wd.mkdir(parents=True)
  left, right = (a + shift for a in ACC[method])
  results = {t: {"student": {"accuracy": a, "agreement": 0.9}}
             for t, a in (("left", left), ("right", right))}
  (wd / "results.json").write_text(json.dumps(results))
  k = {"views_2": 2, "views_8_mix": 8, "views_1_long": 1}.get(method, 0)
  mix = method.endswith("_mix")
  tdir = root / "views" / "teachers" / f"t{seed}"
  (wd / "config.json").write_text(json.dumps(dict(
      cache=dict(views=k, mixup=mix),
      student=dict(steps=1000 if method.endswith("_long") else 100),
      teacher=dict(workdir="" if method.startswith("online") else
                   str(tdir)))))
  (wd / "timings.json").write_text(json.dumps(dict(
      student=10.0 if method != "views_2" else 10.5, teachers=3.0)))
  if not method.startswith("online"):
    cache = tdir / "cache" / (f"left-views{k}{'mix' * mix}" if k else
                              "left") / "train"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "x.npy").write_bytes(b"0" * (MB[method] * 1_000_000))


def test_report_recovers_the_paired_share(tmp_path):
  for seed, shift in ((0, 0.0), (1, 0.01)):
    for m in ACC:
      _run(tmp_path, m, seed, shift)
  path = rv.report(str(tmp_path), str(tmp_path / "figs"))
  md = open(path).read()
  row = next(x for x in md.splitlines() if x.startswith("| views_2 |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1:3] == ["100", "2"]  # Steps, seeds.
  assert cells[3] == "78.50 ± 0.71"  # left accuracy over the two seeds.
  assert cells[7] == "0.80 ± 0.00"   # (78 - 70) / (80 - 70), both seeds.
  assert cells[8] == "0.75 ± 0.00"   # (66 - 60) / (68 - 60).
  assert cells[9] == "2.00 ± 0.00"   # MB of its train cache.
  assert cells[10] == "3.00 ± 0.00"  # Its caching (teacher stage) time.
  assert cells[12] == "0.95"         # 10 / 10.5 ms per step.
  mix = next(x for x in md.splitlines() if x.startswith("| views_8_mix |"))
  assert [c.strip() for c in mix.strip("|").split("|")][9] == "3.00 ± 0.00"
  long = next(x for x in md.splitlines() if x.startswith("| views_1_long |"))
  long = [c.strip() for c in long.strip("|").split("|")]
  # (80 - 72) / (82 - 72): against fixed_long and online_long.
  assert long[1] == "1000" and long[7] == "0.80 ± 0.00"
