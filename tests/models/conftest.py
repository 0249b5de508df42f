"""Captions and the tokenizer trained on them, shared by tests/models/test_clip.py and test_tokenizer.py."""

import pytest

from nbutils.models.tokenizer import train_tokenizer

ZH = [
    "一个红色的圆形",
    "两只猫在草地上玩耍",
    "一只狗在海边奔跑",
    "桌子上放着一杯咖啡",
    "蓝色的天空中有白云",
    "一个男人骑着自行车",
    "孩子们在公园里踢足球",
    "一辆红色的汽车停在路边",
    "女人在厨房里做饭",
    "一盘新鲜的水果",
    "雪山下有一片湖",
    "夜晚的城市灯火通明",
    "一只鸟站在树枝上",
    "老人在读报纸",
    "绿色的三角形",
    "黄色的正方形在中间",
    "一群羊在山坡上吃草",
    "火车穿过隧道",
    "小女孩拿着气球",
    "海上有一艘帆船",
    "篮球运动员在投篮",
    "一碗热气腾腾的面条",
    "猫睡在沙发上",
    "街上有很多行人",
    "一个蓝色的圆形",
]
EN = [
    "A red circle on a white background",
    "Two cats playing on the grass",
    "A dog running on the beach",
    "A cup of coffee on the table",
    "White clouds in a blue sky",
    "A man riding a bicycle",
    "Children playing football in the park",
    "A red car parked by the road",
    "A woman cooking in the kitchen",
    "A plate of fresh fruit",
    "A lake below a snowy mountain",
    "The city lit up at night",
    "A bird standing on a branch",
    "An old man reading a newspaper",
    "A green triangle",
    "A yellow square in the middle",
    "Sheep grazing on a hillside",
    "A train going through a tunnel",
    "A little girl holding a balloon",
    "A sailboat on the sea",
    "A basketball player shooting",
    "A bowl of hot noodles",
    "A cat sleeping on the sofa",
    "Many people walking in the street",
    "A blue circle",
]
CAPTIONS = ZH + EN


@pytest.fixture(scope="session")
def captions() -> list[str]:
    """50 captions, 25 Chinese then 25 English (a fresh list: callers may not mutate the shared one)."""
    return list(CAPTIONS)


@pytest.fixture(scope="module")
def tokenizer(captions):
    """`train_tokenizer(captions, vocab_size=3000)`, once per test module. Deep-copy it before changing it."""
    return train_tokenizer(captions, vocab_size=3000)
