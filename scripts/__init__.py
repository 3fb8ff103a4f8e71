"""The `cmseg` command line: the RPDL paper's leave-one-out experiments.

Subcommands (`scripts.cli`): `synth` (synthetic CM data), `train`
(`scripts.train`, one fold, crash-safe and resumable), `evaluate`
(`scripts.evaluate`, the paper's protocol and Tables I-IV), `predict`
(`scripts.predict`) and `demo` (`scripts.demo`, what `make demo` runs).
Installed as the console script `cmseg`; from a checkout `python -m scripts`.
"""
