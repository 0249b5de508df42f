"""nbutils: the tested engine behind the image–text workbench notebooks.

The subpackages follow the pipeline; each notebook is a thin layer over one stage module:

    processdata_01 ─ data.download ──┐    demo/          the generated data set, its faulty web site
    processdata_02 ─ data.validate ──┤    models/        image processors, tokenizers, CLIP-style models
    processdata_03 ─ data.prepare ───┤    evaluation/    retrieval, zero-shot probes, embeddings
    train_clip ───── training.clip ──┘    reporting/     figures, image grids, the run's index page
                                          runner/        profiles, parameters, papermill execution

    config.py    each stage's parameters, declared once (a dataclass per notebook)
    stages.py    what each stage leaves for the next, read back with load_downloaded / load_validated /
                 load_prepared / load_clip
    files.py     atomic writes;  errors.py  DataError and small checks;  parallel.py  process pools
    progress.py  a kernel's progress bar, which the runner shows;  notebook_log.py  a kernel's warnings and
                 library messages, written to <notebook>.log instead of its report (started on import, below)

Stages 01 and 02 never import torch. `python -m nbutils run --profile demo` runs the whole pipeline.
"""

from . import notebook_log

__version__ = "0.1.0"

notebook_log.start()  # does nothing unless the runner started this kernel (NBUTILS_LOG_FILE)
notebook_log.quiet_library_chatter()
