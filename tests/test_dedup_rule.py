"""The duplicate rule, titles, union-find groups."""

import numpy as np
import pytest

from visprep.config import VisprepConfig
from visprep.dedup.groups import canonical_members, connected_groups
from visprep.dedup.titles import title_candidate_pairs, title_similarity
from visprep.rules import parse_rule


def test_rule_evaluates_and_or():
    rule = parse_rule("identical_image or (image_near and title_similar)")
    out = rule.evaluate({"identical_image": np.array([1, 0, 0, 0], bool), "image_near": np.array([0, 1, 1, 0], bool),
                         "title_similar": np.array([0, 1, 0, 1], bool)})
    assert out.tolist() == [True, True, False, False]


@pytest.mark.parametrize("text, message", [
    ("image_near and colour_similar", "unknown signal 'colour_similar'"),
    ("not image_near", "only signal names"),
    ("image_near + title_similar", "only signal names"),
    ("image_near and", "not a valid expression"),
    ("image_similar or title_similar", "accepts pairs with none of"),
    ("", "non-empty"),
])
def test_bad_rules_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(text)
    with pytest.raises(ValueError):
        VisprepConfig.model_validate({"dedup": {"rule": text}})


def test_title_lsh_finds_rewordings_within_a_category_only():
    titles = ["Nordhaven Black Leather Ankle Boots", "ankle boots, black leather - Nordhaven - Free Shipping",
              "Nordhaven Black Leather Ankle Boots", "Corvo Red Linen Dress", "Oakline Grey Wool Coat"]
    blocks = ["Footwear", "Footwear", "Apparel", "Apparel", None]
    i, j = title_candidate_pairs(titles, blocks, lsh_threshold=0.4)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1)]  # 0 and 2 are identical, but in different categories
    sim = title_similarity([titles[0], titles[3]], [titles[1], titles[4]])
    assert sim[0] > 0.9 and sim[1] < 0.6
    with pytest.raises(ValueError, match="valid"):
        title_similarity(["a"], ["b"], scorer="cosine")


def test_groups_are_components_with_a_canonical_member():
    labels = connected_groups(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert labels.tolist() == [0, 0, 0, 1, 2, 2]
    canon = canonical_members(labels, [(3,), (1,), (2,), (0,), (5,), (4,)])
    assert canon.tolist() == [1, 1, 1, 3, 5, 5]
