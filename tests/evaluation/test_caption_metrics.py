"""caption_metrics against pycocoevalcap's scorers called directly on the same tokenised captions.

METEOR's JVM loads a 60 MB paraphrase table at start (10-20 s here), so it is started only in the
module-scoped `full` fixture (once per language); every other test runs without Java.
"""

import shutil
import subprocess
import sys
import threading

import jieba
import pandas as pd
import pycocoevalcap.meteor.meteor as meteor_module
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from nbutils.errors import DataError
from nbutils.evaluation import caption_metrics as cm

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="METEOR needs java")

SETS = {
    "zh": (
        {
            "a": "一个男人在街上走路。",
            "b": "一只狗在草地上奔跑",
            "c": "两个孩子在海边玩沙子",
            "d": "一个女人坐在椅子上看书。",
            "e": "一辆红色的汽车停在路边",
            "f": "一群人在公园里跑步，天气很好",
        },
        {
            "a": ["一个男人在路上行走。", "男人在街道上走路", "一个穿着黑色衣服的男人在街上走"],
            "b": [
                "一只小狗在草地上跑。",
                "狗在绿色的草坪上奔跑",
                "草地上有一只狗在奔跑",
                "一只白色的狗在草地上玩耍",
            ],
            "c": ["两个小孩在沙滩上玩耍。", "海边有两个孩子在玩沙子"],
            "d": ["一位女士坐在椅子上看书", "女人在房间里读书。", "一个女人坐着看一本书"],
            "e": [
                "路边停着一辆红色的车。",
                "一辆红色轿车停在街道旁边",
                "红色的汽车停在马路边上",
                "一辆车停在路边",
                "街边停着一辆红色汽车",
            ],
            "f": ["一群人在公园里跑步。", "很多人在公园跑步，阳光明媚"],
        },
    ),
    "en": (
        {
            1: "A man is walking down the street.",
            2: "A dog runs on the grass.",
            3: "Two children play with sand on the beach",
            4: "A woman sitting on a chair, reading a book.",
            5: "A red car parked by the road.",
            6: "People running in a park",
            7: "A plate of food on a table.",
        },
        {
            1: [
                "A man walks down a street.",
                "a man walking on the sidewalk",
                "A man in a black coat walks.",
            ],
            2: [
                "A small dog running on the grass.",
                "A dog plays in a green field.",
                "The dog runs outside.",
            ],
            3: ["Two kids playing on the beach.", "Children playing with sand by the sea."],
            4: ["A woman reads a book in a chair.", "A lady sitting and reading.", "A woman with a book."],
            5: ["A red car parked on the side of the road.", "A red car on the street.", "A parked car."],
            6: ["A group of people running in a park.", "People jogging in the park on a sunny day."],
            7: ["A plate of food on a wooden table.", "Some food on a plate.", "A meal on a table."],
        },
    ),
}


def tokenised(language, tokenization=None):
    """The oracle's input: tokenize_caption applied to every caption of the set, in pycocoevalcap's form."""
    predictions, references = SETS[language]
    gts = {
        k: [cm.tokenize_caption(r, language, tokenization) for r in refs] for k, refs in references.items()
    }
    res = {k: [cm.tokenize_caption(predictions[k], language, tokenization)] for k in references}
    return gts, res


@pytest.fixture(scope="module")
def full():
    """caption_metrics with METEOR for both sets, recording every METEOR instance and call it made."""
    instances = []

    class RecordingMeteor(meteor_module.Meteor):
        def __init__(self):
            super().__init__()
            self.calls = []
            instances.append(self)

        def compute_score(self, gts, res):
            score = super().compute_score(gts, res)
            self.calls.append(
                ({k: list(v) for k, v in gts.items()}, {k: list(v) for k, v in res.items()}, score)
            )
            return score

    cm._stop_shared_meteor()  # a JVM another test left running would answer instead of a recording one
    threads_before = set(threading.enumerate())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(meteor_module, "Meteor", RecordingMeteor)
        results = {lang: cm.caption_metrics(*SETS[lang], lang, per_image=True) for lang in SETS}
    threads_after = set(threading.enumerate())
    alive_after_use = [m.meteor_p.poll() is None for m in instances]
    cm._stop_shared_meteor()
    return {
        "results": results,
        "instances": instances,
        "alive_after_use": alive_after_use,
        "new_threads": threads_after - threads_before,
    }


@pytest.fixture
def no_java(monkeypatch):
    which = shutil.which
    monkeypatch.setattr(
        cm.shutil, "which", lambda name, *a, **k: None if name == "java" else which(name, *a, **k)
    )


@pytest.mark.parametrize("language", ["zh", "en"])
def test_metrics_equal_pycocoevalcap_on_the_same_tokens(full, language):
    result = full["results"][language]
    gts, res = tokenised(language)
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, cider_per_image = Cider().compute_score(gts, res)
    for i in range(4):
        assert result[f"bleu{i + 1}"] == pytest.approx(bleu[i], abs=1e-12)
    assert result["rouge_l"] == pytest.approx(rouge, abs=1e-12)
    assert result["cider"] == pytest.approx(cider, abs=1e-12)
    assert all(type(result[k]) is float for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"))
    assert 0 < result["bleu4"] < result["bleu1"] < 1 and 0 < result["rouge_l"] < 1 and result["cider"] > 0
    assert result["n_images"] == len(gts)
    assert result["tokenization"] == {"zh": "jieba", "en": "words"}[language]
    assert list(result["per_image"]) == list(gts)
    for i, key in enumerate(gts):
        assert result["per_image"][key]["cider"] == pytest.approx(cider_per_image[i], abs=1e-12)
        assert result["per_image"][key]["bleu4"] == pytest.approx(bleu_per_image[3][i], abs=1e-12)


@needs_java
@pytest.mark.parametrize("language", ["zh", "en"])
def test_meteor_is_pycocoevalcaps_on_the_same_tokens(full, language):
    result = full["results"][language]
    index = list(SETS).index(language)
    gts, res, (score, _) = full["instances"][0].calls[index]
    assert (gts, res) == tokenised(language)
    assert result["meteor"] == pytest.approx(score, abs=1e-12)
    assert type(result["meteor"]) is float and 0 < result["meteor"] < 1
    assert result["meteor_missing_reason"] is None


@needs_java
def test_one_meteor_process_serves_every_call_and_is_closed_at_the_end(full):
    assert len(full["instances"]) == 1  # one JVM for both sets (starting one costs 5-10 s)
    (meteor,) = full["instances"]
    assert len(meteor.calls) == len(SETS) and full["alive_after_use"] == [True]
    # _stop_shared_meteor (registered with atexit) closed it
    assert meteor.meteor_p.poll() is not None
    assert meteor.meteor_p.stdin.closed and meteor.meteor_p.stdout.closed
    assert not meteor.lock.locked()
    assert not [t for t in full["new_threads"] if t.is_alive()]  # the watchdog timer is gone


@needs_java
def test_a_failing_meteor_is_reported_missing_not_zero(monkeypatch):
    # java starts but cannot find the jar: the JVM exits at once and the pipe breaks
    cm._stop_shared_meteor()
    monkeypatch.setattr(meteor_module, "METEOR_JAR", "no-such-meteor.jar")
    result = cm.caption_metrics(*SETS["en"], "en")
    assert result["meteor"] is None
    assert "METEOR subprocess failed" in result["meteor_missing_reason"]
    assert "no-such-meteor.jar" in result["meteor_missing_reason"]
    assert result["cider"] > 0
    assert cm._shared_meteor == []  # a failed JVM is not kept: the next call starts a fresh one
    monkeypatch.undo()
    again = cm.caption_metrics(*SETS["en"], "en")
    assert again["meteor_missing_reason"] is None and 0 < again["meteor"] < 1
    cm._stop_shared_meteor()


@needs_java
def test_a_stuck_meteor_is_killed_by_the_watchdog(monkeypatch):
    # the JVM needs seconds to load its paraphrase table: killed long before it answers
    cm._stop_shared_meteor()
    monkeypatch.setattr(cm, "METEOR_TIMEOUT_S", 0.3)
    threads_before = set(threading.enumerate())
    result = cm.caption_metrics(*SETS["en"], "en")
    assert result["meteor"] is None
    assert "killed after METEOR_TIMEOUT_S" in result["meteor_missing_reason"]
    assert not [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]


def test_meteor_is_none_with_a_reason_without_java(full, no_java, monkeypatch):
    started = []
    monkeypatch.setattr(meteor_module, "Meteor", lambda: started.append(1))
    result = cm.caption_metrics(*SETS["zh"], "zh", per_image=True)
    assert started == []
    assert result["meteor"] is None
    assert "java" in result["meteor_missing_reason"]
    with_java = full["results"]["zh"]
    for key in (
        "bleu1",
        "bleu2",
        "bleu3",
        "bleu4",
        "rouge_l",
        "cider",
        "tokenization",
        "n_images",
        "per_image",
    ):
        assert result[key] == with_java[key]


def test_jieba_is_the_ai_challenger_protocol():
    assert cm.tokenize_caption("一个男人在街上走路。", "zh") == "一个 男人 在 街上 走路"
    for text in SETS["zh"][0].values():
        aic = " ".join(w for w in jieba.cut(text.replace("。", ""), cut_all=False) if w.strip())
        assert cm.tokenize_caption(text, "zh", "jieba") == aic
        assert "。" not in aic
    assert (
        cm.tokenize_caption(" 一群人在公园里跑步，天气很好。 ", "zh")
        == "一群 人 在 公园 里 跑步 ， 天气 很 好"
    )


def test_char_tokenization_keeps_punctuation_but_drops_the_full_stop():
    assert cm.tokenize_caption("一只狗， 在跑。", "zh", "char") == "一 只 狗 ， 在 跑"
    assert cm.tokenize_caption("T恤\n很好。。", "zh", "char") == "T 恤 很 好"


def test_english_words_are_lower_case_with_punctuation_split_off():
    assert cm.tokenize_caption("A Man's DOG,  running!\tFast.", "en") == "a man ' s dog , running ! fast ."
    assert cm.tokenize_caption("  Two   cats. ", "en", "words") == "two cats ."


def test_the_segmenter_matters_and_is_recorded(no_java):
    jieba_result = cm.caption_metrics(*SETS["zh"], "zh")
    char_result = cm.caption_metrics(*SETS["zh"], "zh", tokenization="char")
    assert jieba_result["tokenization"] == "jieba" and char_result["tokenization"] == "char"
    assert abs(jieba_result["cider"] - char_result["cider"]) > 0.1
    assert char_result["bleu4"] > jieba_result["bleu4"]  # character n-grams match more easily
    gts, res = tokenised("zh", "char")
    assert char_result["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


def test_cider_of_the_set_is_not_the_mean_of_single_sentence_ciders(no_java):
    predictions, references = SETS["en"]
    whole = cm.caption_metrics(predictions, references, "en", per_image=True)
    alone = [cm.caption_metrics({k: predictions[k]}, {k: references[k]}, "en")["cider"] for k in references]
    assert alone == [0.0] * len(references)  # one image: every n-gram has idf log(1/1) = 0
    assert whole["cider"] > 1.0
    # the set's CIDEr is the mean of the per-image scores computed with the set's document frequencies
    per_image = [v["cider"] for v in whole["per_image"].values()]
    assert whole["cider"] == pytest.approx(sum(per_image) / len(per_image), abs=1e-12)


@pytest.mark.parametrize(
    "change, key, words",
    [
        (lambda p, r: p.pop("c"), "'c'", "predictions"),
        (lambda p, r: p.update({"zz": "多余的句子"}), "'zz'", "references"),
        (lambda p, r: r.update({"d": []}), "'d'", "empty reference list"),
        (lambda p, r: r.update({"d": "一个女人"}), "'d'", "list of captions"),
    ],
    ids=["missing prediction", "extra prediction", "empty references", "string as references"],
)
def test_bad_inputs_raise_data_error_naming_the_key(no_java, change, key, words):
    predictions, references = dict(SETS["zh"][0]), dict(SETS["zh"][1])
    change(predictions, references)
    with pytest.raises(DataError, match=words) as info:
        cm.caption_metrics(predictions, references, "zh")
    assert key in str(info.value)


def test_no_images_is_a_data_error(no_java):
    with pytest.raises(DataError, match="no images"):
        cm.caption_metrics({}, {}, "en")


def test_unknown_language_or_tokenization_raises_value_error_naming_it():
    with pytest.raises(ValueError, match=r"language .*'fr'") as info:
        cm.caption_metrics(*SETS["en"], "fr")
    assert not isinstance(info.value, DataError) and "['en', 'zh']" in str(info.value)
    with pytest.raises(ValueError, match=r"tokenization .*\['jieba', 'char'\].*'thulac'"):
        cm.caption_metrics(*SETS["zh"], "zh", tokenization="thulac")
    with pytest.raises(ValueError, match=r"tokenization .*\['words'\].*'char'"):
        cm.tokenize_caption("a dog", "en", "char")


def test_constant_baseline_predicts_the_most_frequent_caption():
    train = ["a dog", "a cat", "a man", "a cat", "a dog", "a man on a horse"]
    assert cm.constant_baseline(train, [1, 2]) == {1: "a dog", 2: "a dog"}  # tie with "a cat": first wins
    assert cm.constant_baseline(train + ["a cat"], ["x"]) == {"x": "a cat"}
    with pytest.raises(ValueError, match="train_captions"):
        cm.constant_baseline([], [1])


def test_the_baseline_scores_below_a_perfect_prediction(no_java):
    _, references = SETS["zh"]
    train = ["一个人在街上", "一只狗在草地上", "一个人在街上", "一辆车停在路边"]
    baseline = cm.caption_metrics(cm.constant_baseline(train, references), references, "zh")
    perfect = cm.caption_metrics({k: refs[0] for k, refs in references.items()}, references, "zh")
    assert perfect["bleu4"] > baseline["bleu4"]
    assert perfect["cider"] > baseline["cider"]
    assert perfect["bleu4"] > 0.9


def test_the_module_does_not_import_torch():
    code = "import sys, nbutils.evaluation.caption_metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_metrics_table_puts_the_baseline_beside_the_model_with_ratios():
    from nbutils.evaluation.caption_metrics import METRIC_KEYS, metrics_table

    model = {
        "bleu1": 0.5,
        "bleu2": 0.4,
        "bleu3": 0.3,
        "bleu4": 0.2,
        "meteor": None,
        "rouge_l": 0.6,
        "cider": 1.2,
    }
    baseline = {
        "bleu1": 0.25,
        "bleu2": 0.2,
        "bleu3": 0.1,
        "bleu4": 0.0,
        "meteor": None,
        "rouge_l": 0.3,
        "cider": 0.3,
    }
    table = metrics_table(model, baseline)
    assert list(table.index) == list(METRIC_KEYS)
    assert table.loc["cider", "ratio"] == pytest.approx(4.0) and table.loc["bleu1", "ratio"] == pytest.approx(
        2.0
    )
    assert table.loc["bleu4", "ratio"] is None or pd.isna(table.loc["bleu4", "ratio"])  # no ratio over a zero
    assert pd.isna(table.loc["meteor", "model"])
