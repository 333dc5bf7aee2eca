"""Experiments: regenerate every paper's figures with one Hydra + Ray + wandb harness.

    python -m experiments                       list the experiments
    python -m experiments.<name> [key=value]    run one (profile=ci by default; --help shows the config)
    python -m experiments.<name> -m engine.page_size=8,16,32     a Hydra multirun: one run per value
    python -m experiments.<name> replot=results/<name>/rows-<run id>.jsonl   redraw figures, measure nothing
    python -m experiments.report                write README.md's results table from results/

Each run validates its config before any work (a bad key or model path fails at once), runs the
sweep points as Ray tasks (``ray.enabled=false``: in this process; ``ray.address=...``: on a
cluster; GPU points ask Ray for a GPU), loads the model once per worker, and writes

    results/<name>/rows-<run id>.jsonl          config, machine and metrics per point
    results/<name>/figures/<fig>-<cpu|gpu>.png  and .pdf, plus .json for the README table
    results/<name>/wandb/                       an offline wandb run (wandb.mode=online to log live)

Map of this package:

    harness/       the machinery (config validation, runner, worker context, results, wandb, testing)
    engine.py      the core engine against transformers generate (prefill and decode throughput)
    report.py      the README results table
    <paper>.py     one file per paper, reading like its evaluation section: one function per figure

Adding an experiment (``conf/<name>.yaml`` plus ``experiments/<name>.py``)::

    # conf/<name>.yaml (conf/sweep/<name>/ci.yaml and paper.yaml hold the sweep sizes, e.g. lengths: [256])
    defaults:
      - harness
      - sweep/<name>@sweep: ${profile}
      - _self_
    name: <name>

    # experiments/<name>.py
    EXPERIMENT = Experiment("<name>")

    @EXPERIMENT.points
    def points(cfg):                  # plain-JSON dicts, computed before any work
        return [{"system": s, "length": n} for s in ("baseline", "cached") for n in cfg.sweep.lengths]

    @EXPERIMENT.measure
    def measure(ctx, point, cfg):     # runs in a worker; ctx.model() / ctx.engine() are cached there
        return {"ttft_s": ..., "tokens": ...}   # timings end in _s, _ms or _per_s

    @EXPERIMENT.figure(paper="Fig 5: cached TTFT grows linearly, recompute quadratically")
    def fig_ttft_by_length(records, cfg):       # records = [{**point, **metrics}, ...]
        return FigureResult(figure=<matplotlib figure>, ours="cached 4.1x faster at 4K tokens")

    if __name__ == "__main__":
        EXPERIMENT.main()

A CI reproduction check then runs it at profile=ci and asserts the paper's claim on the rows:
``experiments.harness.testing.run_experiment("<name>", ["sweep.lengths=[256]"], tmp_path).records``.
Keep the experiment's imports of torch and the models inside functions: ``python -m experiments``
and a bad config must answer in a second.
"""
