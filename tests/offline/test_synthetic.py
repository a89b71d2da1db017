"""The synthetic generator (shared/data/synthetic.py): parameters fitted to MicroLens-50k, what
it draws follows them, what it writes is a valid custom dataset, and a seed fixes every byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from shared.data import load_dataset
from shared.data.synthetic import fit, generate, observed, synth, synthetic_observed


@pytest.fixture(scope="module")
def microlens(data_dir: Path):
    ds = load_dataset("microlens-50k", data_dir)  # fails (not skips) without the data
    return ds, fit(ds)


def test_fit_describes_microlens(microlens) -> None:
    ds, params = microlens
    lengths = np.array([len(s) for s in ds.sequences.values()])
    assert params.history_min == lengths.min() == 5
    assert params.history_mean == pytest.approx(lengths.mean())
    assert 0.3 < params.zipf_a < 2.0 and 0.5 < params.heaps_beta < 1.0
    assert params.vocab_for(params.items) == pytest.approx(params.vocab, rel=0.15)
    assert sum(params.tags_pmf) == pytest.approx(1.0, abs=1e-4)
    assert params.popularity_s > 0 and params.popularity_scale > 0


def test_drawn_dataset_follows_the_fit(microlens) -> None:
    ds, params = microlens
    real = observed(ds)
    drawn = synthetic_observed(generate(params, params.items, params.users, seed=3))
    for key, limit in (("popularity", 0.1), ("history", 0.1), ("tags_per_item", 0.05),
                       ("title_words", 0.15)):
        distance = stats.ks_2samp(real[key], drawn[key]).statistic
        assert distance < limit, f"{key}: KS distance {distance:.3f}"
    assert drawn["history"].mean() == pytest.approx(real["history"].mean(), rel=0.1)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.suffix in (".csv", ".npy")}


def test_written_folder_loads_and_a_seed_fixes_every_byte(microlens, tmp_path: Path) -> None:
    _, params = microlens
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    doc = synth(a, 2000, 1500, seed=11, params=params)
    synth(b, 2000, 1500, seed=11, params=params)
    synth(c, 2000, 1500, seed=12, params=params)
    assert digest(a) == digest(b) and digest(a) != digest(c)
    ds = load_dataset(str(a), tmp_path)
    assert len(ds.items) == 2000 and len(ds.sequences) == 1500
    assert ds.num_interactions == doc["interactions"]
    assert min(len(s) for s in ds.sequences.values()) >= params.history_min
    assert ds.embeddings is not None and ds.embeddings.shape == (2000, 384)
    np.testing.assert_allclose(np.linalg.norm(ds.embeddings, axis=1), 1.0, atol=1e-5)
    assert sum(bool(it.tags) for it in ds.items) > 1500
    # items sharing a tag are closer than random pairs (the embeddings carry the tags)
    by_tag: dict[str, list[int]] = {}
    for r, it in enumerate(ds.items):
        for t in it.tags:
            by_tag.setdefault(t, []).append(r)
    rows = max(by_tag.values(), key=len)[:50]
    same = (ds.embeddings[rows] @ ds.embeddings[rows].T).mean()
    other = (ds.embeddings[:50] @ ds.embeddings[1000:1050].T).mean()
    assert same > other + 0.1


def test_cli_refuses_empty_sizes(tmp_path: Path) -> None:
    from vidrec_cli import main

    with pytest.raises(SystemExit, match="at least 1"):
        main(["data", "synth", str(tmp_path / "x"), "--items", "0", "--users", "5"])
