import numpy as np

from dpmed.data.splits import grouped_stratified_split, patient_id, stratified_subsample


def test_patient_ids_from_kermany_file_names():
    assert patient_id("person1000_bacteria_2931.jpeg") == "person1000"
    assert patient_id("person1000_virus_1681.jpeg") == "person1000"
    assert patient_id("IM-0115-0001.jpeg") == "IM-0115"
    assert patient_id("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert patient_id("IM-0001-0001-0002.jpeg") == "IM-0001"
    assert patient_id("scan.png") == "scan"


def _toy(n_patients=300, seed=1):
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 4, n_patients)
    groups = np.repeat([f"p{i}" for i in range(n_patients)], per)
    labels = np.repeat((rng.random(n_patients) < 0.7).astype(int), per)
    return labels, groups


def test_grouped_split_keeps_patients_whole_and_classes_balanced():
    labels, groups = _toy()
    keep, held = grouped_stratified_split(labels, groups, 0.1, seed=0)
    assert set(groups[keep]).isdisjoint(groups[held])
    assert len(keep) + len(held) == len(labels)
    for label in (0, 1):
        share = (labels[held] == label).sum() / (labels == label).sum()
        assert 0.08 <= share <= 0.14


def test_grouped_split_is_seeded():
    labels, groups = _toy()
    first = grouped_stratified_split(labels, groups, 0.1, seed=3)[1]
    again = grouped_stratified_split(labels, groups, 0.1, seed=3)[1]
    other = grouped_stratified_split(labels, groups, 0.1, seed=4)[1]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_stratified_subsample_keeps_proportions():
    labels = np.array([0] * 300 + [1] * 700)
    chosen = stratified_subsample(labels, 100, seed=0)
    assert len(chosen) == 100 and (labels[chosen] == 0).sum() == 30
    assert np.array_equal(chosen, np.unique(chosen))
    assert len(stratified_subsample(labels, 5000, seed=0)) == 1000
