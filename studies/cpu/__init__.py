"""The CPU-scale reproduction study (write-up: notebooks/cpu_study.md; results: notebooks/results/).

    run.py        the study end to end: warm starts, every domain x method x seed through launch/train.py,
                  cpu_study.json, its tables and plots (python studies/cpu/run.py --help)
    pretrain.py   SFT-warm-starts one small model per domain (python studies/cpu/pretrain.py --help)
    study.py      the pure parts: presets, run plan, train commands, records, statistics, the evaluation
                  hook the gin files bind (`study.evaluate_and_report`)
    report.py     tables and figures computed from cpu_study.json, beside the paper's numbers
    warm_start/   the SFT corpora (math, MLE-lite) and the small-model SFT trainer
    gin/          the study's configs: {math,mle}.gin (full preset) and {math,mle}_quick.gin

The gin files import `studies.cpu.study`, so launch/train.py needs the repository root on PYTHONPATH when
it is given them (run.py passes it; by hand: `PYTHONPATH=. python launch/train.py --gin_file=...`).
"""
