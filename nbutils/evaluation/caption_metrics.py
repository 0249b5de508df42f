"""Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) for Chinese and English, no torch.

The scorers are pycocoevalcap's, called one by one on captions this module has already tokenised
(`tokenize_caption`): `COCOEvalCap.evaluate()` is not used because it always builds SPICE, which
downloads Stanford CoreNLP at first use and fails offline, so SPICE is not offered. pycocoevalcap's
PTBTokenizer (Java) is not used either: tokenisation is done here and recorded in every result.

Chinese follows the AI Challenger 2017 caption evaluator: remove '。', segment with jieba's precise
mode, join the words with spaces, then score. The segmenter moves Chinese scores a lot (and
character-level scores are higher than word-level ones), so the tokenisation is part of the result
and scores compare only between runs with the same one.

CIDEr here is pycocoevalcap's `Cider`, which is CIDEr-D (Gaussian length penalty, clipped counts,
x10). Its document frequencies come from the references of the evaluated set, so it is computed over
the whole set: the CIDEr of a single sentence scored alone is 0 by construction, and the set's CIDEr
is not the mean of such single-sentence scores.

METEOR runs pycocoevalcap's meteor-1.5.jar in a Java subprocess (with its English settings, as the
AI Challenger evaluator did for Chinese too). Without Java it is reported as None with a reason,
never as 0.
"""

from __future__ import annotations

import atexit
import re
import shutil
import threading
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import pandas as pd

from ..errors import DataError, short_error
from ..reporting.tables import formatted

TOKENIZATIONS = {"zh": ("jieba", "char"), "en": ("words",)}
DEFAULT_TOKENIZATION = {"zh": "jieba", "en": "words"}
# The AI Challenger evaluator removes the full stop before segmenting; "char" drops it too, so that
# "jieba" and "char" see the same characters. Other punctuation ('，' included) stays as tokens.
ZH_DROPPED = "。"
# English: runs of letters/digits/underscore are words; every other non-space character is a token.
_EN_TOKEN = re.compile(r"\w+|[^\w\s]")
# The METEOR subprocess is killed if one evaluation takes longer than this (it answers line by line on
# a pipe, so a stuck JVM would otherwise block forever); the score is then reported missing.
METEOR_TIMEOUT_S = 600.0


def check_tokenization(language: str, tokenization: str | None = None) -> str:
    """The tokenisation to use for `language` (its default when None); ValueError names a bad parameter."""
    if language not in TOKENIZATIONS:
        raise ValueError(f"language must be one of {sorted(TOKENIZATIONS)}; got {language!r}")
    if tokenization is None:
        return DEFAULT_TOKENIZATION[language]
    if tokenization not in TOKENIZATIONS[language]:
        raise ValueError(
            f"tokenization for language {language!r} must be one of {list(TOKENIZATIONS[language])}; "
            f"got {tokenization!r}"
        )
    return tokenization


def tokenize_caption(text: str, language: str, tokenization: str | None = None) -> str:
    """`text` as space-separated tokens, the form pycocoevalcap's scorers expect.

    - zh "jieba" (default for zh): the AI Challenger protocol: remove '。', `jieba.cut(text,
      cut_all=False)`, drop whitespace tokens, join with single spaces.
    - zh "char": every non-space character is a token, punctuation included ('，' stays), except
      '。', which is dropped as in "jieba".
    - en "words" (default for en): lower case; runs of letters and digits are words, every other
      non-space character (punctuation) is a token of its own; whitespace collapsed.

    The result never contains a newline (METEOR's pipe protocol depends on that).
    """
    tokenization = check_tokenization(language, tokenization)
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    if tokenization == "jieba":
        import jieba

        words = jieba.cut(text.replace(ZH_DROPPED, ""), cut_all=False)
        return " ".join(word.strip() for word in words if word.strip())
    if tokenization == "char":
        return " ".join(ch for ch in text if not ch.isspace() and ch != ZH_DROPPED)
    return " ".join(_EN_TOKEN.findall(text.lower()))


def _checked_inputs(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> list[Hashable]:
    """The image keys in `references` order, after checking that both mappings describe the same images."""
    missing = [key for key in references if key not in predictions]
    if missing:
        raise DataError(f"predictions: no caption for key {missing[0]!r} ({len(missing)} key(s) missing)")
    extra = [key for key in predictions if key not in references]
    if extra:
        raise DataError(f"references: no references for key {extra[0]!r} ({len(extra)} extra prediction(s))")
    if not references:
        raise DataError("references: no images to score")
    for key, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Iterable):
            raise DataError(f"references[{key!r}]: expected a list of captions, got {type(refs).__name__}")
        refs = list(refs)
        if not refs:
            raise DataError(f"references[{key!r}]: empty reference list")
        for ref in refs:
            if not isinstance(ref, str):
                raise DataError(f"references[{key!r}]: a reference is {type(ref).__name__}, not str")
        if not isinstance(predictions[key], str):
            raise DataError(f"predictions[{key!r}]: expected a str, got {type(predictions[key]).__name__}")
    return list(references)


def _close_meteor(meteor) -> str:
    """Stop pycocoevalcap's METEOR subprocess and return what it wrote to stderr (for error messages).

    pycocoevalcap 1.2's Meteor has no close(); its __del__ acquires `meteor.lock`, closes stdin and kills
    the JVM. compute_score() holds that lock while it talks to the JVM and does not release it when it
    raises, so __del__ after a failure would block forever: the lock is replaced by a fresh one here.
    """
    process = meteor.meteor_p
    try:
        process.stdin.close()
    except OSError:
        pass
    if process.poll() is None:
        process.kill()
    process.wait()
    try:
        stderr = process.stderr.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        stderr = ""
    process.stdout.close()
    process.stderr.close()
    meteor.lock = threading.Lock()
    return stderr


# One METEOR JVM per Python process, kept between calls: starting it (Java, then METEOR's English tables) costs
# 5-10 s, more than scoring a test set, and a demo run scores ten sets or so. It is stopped at exit, or after a
# failure (the next call starts a fresh one).
_shared_meteor = []
_meteor_lock = threading.Lock()


def _meteor_scorer():
    from pycocoevalcap.meteor.meteor import Meteor

    if _shared_meteor and _shared_meteor[0].meteor_p.poll() is not None:  # the JVM died since the last call
        _close_meteor(_shared_meteor.pop())
    if not _shared_meteor:
        _shared_meteor.append(Meteor())
    return _shared_meteor[0]


@atexit.register
def _stop_shared_meteor() -> None:
    while _shared_meteor:
        _close_meteor(_shared_meteor.pop())


def _meteor(gts: dict, res: dict) -> tuple[float | None, str | None]:
    """METEOR over the set, or (None, reason) when Java is missing or the subprocess fails."""
    if shutil.which("java") is None:
        return None, "java not found on PATH: pycocoevalcap's METEOR runs meteor-1.5.jar in a Java subprocess"
    with _meteor_lock:
        try:
            meteor = _meteor_scorer()
        except OSError as err:
            return None, f"METEOR could not start java: {short_error(err)}"
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            meteor.meteor_p.kill()

        watchdog = threading.Timer(METEOR_TIMEOUT_S, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            score, _ = meteor.compute_score(gts, res)
            failure = None
        except (
            OSError,
            ValueError,
        ) as err:  # a dead JVM: broken pipe, or an empty line where a number was due
            score, failure = None, short_error(err)
        finally:
            watchdog.cancel()
            watchdog.join()
        if failure is None:
            return float(score), None
        _shared_meteor.remove(meteor)
        stderr = _close_meteor(meteor)
    if timed_out.is_set():
        failure = f"killed after METEOR_TIMEOUT_S = {METEOR_TIMEOUT_S} s ({failure})"
    detail = " ".join(stderr.split())[:300]
    return None, f"METEOR subprocess failed: {failure}" + (f"; java said: {detail}" if detail else "")


def caption_metrics(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    language: str,
    tokenization: str | None = None,
    per_image: bool = False,
) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of one caption per image against its references.

    `predictions` maps an image key to one caption, `references` the same keys to a non-empty list
    of captions; a key in one but not the other, or an empty reference list, raises DataError naming
    the key. Captions are tokenised with `tokenize_caption(text, language, tokenization)` (default
    "jieba" for zh, "words" for en) and scored with pycocoevalcap's Bleu, Meteor, Rouge and Cider.

    Returns plain floats: `bleu1`..`bleu4`, `meteor`, `rouge_l` in 0..1 and `cider` as pycocoevalcap
    gives it (CIDEr-D, x10, typically 0..10), computed over the whole set; `meteor` is None when Java
    is missing or the METEOR subprocess fails, with `meteor_missing_reason` saying why (None when
    METEOR was computed). `tokenization` records the tokenisation and `n_images` the number of images.
    With `per_image=True`, "per_image" maps each key to {"cider": .., "bleu4": ..}: the image's share
    of the set's CIDEr (the set's CIDEr is their mean) and its sentence-level BLEU-4 (pycocoevalcap's,
    with its tiny smoothing; the set's BLEU-4 is corpus-level, not their mean). SPICE is not offered
    (see the module docstring).
    """
    tokenization = check_tokenization(language, tokenization)
    keys = _checked_inputs(predictions, references)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {key: [tokenize_caption(ref, language, tokenization) for ref in references[key]] for key in keys}
    res = {key: [tokenize_caption(predictions[key], language, tokenization)] for key in keys}

    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, cider_per_image = Cider().compute_score(gts, res)
    meteor, meteor_missing_reason = _meteor(gts, res)

    result = {
        "bleu1": float(bleu[0]),
        "bleu2": float(bleu[1]),
        "bleu3": float(bleu[2]),
        "bleu4": float(bleu[3]),
        "meteor": meteor,
        "meteor_missing_reason": meteor_missing_reason,
        "rouge_l": float(rouge),
        "cider": float(cider),
        "tokenization": tokenization,
        "n_images": len(keys),
    }
    if per_image:
        result["per_image"] = {
            key: {"cider": float(cider_per_image[i]), "bleu4": float(bleu_per_image[3][i])}
            for i, key in enumerate(keys)
        }
    return result


def constant_baseline(train_captions: Sequence[str], keys: Iterable[Hashable]) -> dict[Hashable, str]:
    """The most frequent training caption (ties: the first to occur) as the prediction for every key.

    A model that has learnt only the caption prior scores this; always report the baseline's
    `caption_metrics` beside the model's (same references, same tokenisation). Captions are
    compared as given (no normalisation).
    """
    counts = Counter(train_captions)
    if not counts:
        raise ValueError("train_captions must contain at least one caption; got none")
    caption = counts.most_common(1)[0][0]  # most_common orders equal counts by first occurrence
    return {key: caption for key in keys}


METRIC_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


def metrics_table(model: dict, baseline: dict, true_captions: dict | None = None) -> pd.DataFrame:
    """The model's caption metrics beside the constant-caption baseline's: one row per metric, and their ratio;
    with `true_captions` (the metrics of held-out references: human performance) a column for them too."""
    rows = []
    for key in METRIC_KEYS:
        got, base = model.get(key), baseline.get(key)
        ratio = got / base if got is not None and base else None
        row = {"metric": key, "model": got, "baseline": base, "ratio": ratio}
        if true_captions is not None:
            row["true_captions"] = true_captions.get(key)
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")


METRIC_NAMES = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr",
}


def formatted_metrics_table(model: dict, baseline: dict, true_captions: dict | None = None):
    """`metrics_table(model, baseline, true_captions)` for reading: metric names as published (BLEU-4, CIDEr),
    scores with three decimals, the ratio to the constant caption as "8.1×", a missing score as "–"."""
    table = metrics_table(model, baseline, true_captions).rename(index=METRIC_NAMES)
    table = table.rename(
        columns={
            "baseline": "constant caption",
            "ratio": "model / constant",
            "true_captions": "true captions",
        }
    )
    styler = formatted(table, decimals=3)
    return styler.format(lambda v: f"{v:,.1f}×", subset=["model / constant"], na_rep="–")
