"""nbutils: the tested engine behind the image–text workbench notebooks.

Each numbered notebook is a thin layer over one stage module; the stage table lists them all:

    pipeline.py    the stages in one table: notebook, module, config class, what each reads, its loss
    config.py      StageConfig: a notebook's parameters as a dataclass (one default per parameter)
    stages.py      what each stage leaves for the next (stage.json hand-offs: load_prepared, load_trained_clip, ...)
    summaries.py   the schema of each stage's summary.json and the one formatter of its values

    data/          download (processdata_01), validate (02), prepare (03), the image cache, datasets, collators
    training/      the job skeleton (trainer.py), clip.py, encoder_decoder.py, clipcap.py, captioning.py (the
                   captioning loss and Trainer both captioners share), clip_loss.py (InfoNCE and its chance level)
    models/        CLIP-style dual encoders, encoder-decoder captioners, ClipCap, tokenizers, decoding presets
    evaluation/    retrieval, caption metrics (pycocoevalcap), CLIPScore, zero-shot and linear probes
    infer.py       captioning, scoring and search with any trained model; analyze_loss.py  runs side by side
    reporting/     figures, image grids, tables, the caption browser, the run's index page
    runner/        profiles, parameters, fingerprints, papermill execution (`python -m nbutils run`)
    demo/          the generated demo set, its faulty web site, an example folder for own data

    files.py  atomic writes;  errors.py  DataError;  parallel.py  process pools;  progress.py  a kernel's progress
    bar, which the runner shows;  notebook_log.py  a kernel's warnings and library messages, written to
    <notebook>.log instead of its report (started on import, below)

Stages 01 and 02 never import torch. `python -m nbutils run --profile demo` runs the whole pipeline.
"""

from . import notebook_log

__version__ = "0.1.0"

notebook_log.start()  # does nothing unless the runner started this kernel (NBUTILS_LOG_FILE)
notebook_log.quiet_library_chatter()
