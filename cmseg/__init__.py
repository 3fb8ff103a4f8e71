"""The `cmseg` command line: the RPDL paper's leave-one-out experiments.

Subcommands (`cmseg.cli`): `synth` (synthetic CM data), `train`
(`cmseg.train`, one fold, crash-safe and resumable), `evaluate`
(`cmseg.evaluate`, the paper's protocol and Tables I-IV), `predict`
(`cmseg.predict`: `.npy`, NIfTI or NRRD in, the same format out), `check-data`
(validate a folder of multi-annotator cases, `cm_dataset.folder`), `study`
(`cmseg.study`) and `demo` (`cmseg.demo`, what `make demo` runs).
Installed as the console script `cmseg`; from a checkout `python -m cmseg`.
"""
