#!/usr/bin/env python3
"""Expected values from numpy / an upstream re-implementation for the pbip-kmeans tests.

Usage (from this folder):  pip install numpy scikit-learn && python3 make_expected.py
Writes expected_kmeans.json next to this script; the Rust tests read it (no Python at test time).

Contents:
* numpy legacy RNG: np.random.seed(s); np.random.choice(n, k, replace=False) for several
  (n, k, seed), np.random.permutation(n), np.random.random_sample(), array seeds.
* Upstream PBIP `CosineSimilarityKMeans` (features/k_mean_cos_per_class.py, spec section 7),
  re-implemented below line by line (float64 data instead of upstream's float32), run on random
  data: final centres, labels, number of loop iterations, whether it stopped on np.allclose.
"""
import json
import os
import struct
import sys

import numpy as np
import sklearn
from sklearn.metrics.pairwise import cosine_similarity

HERE = os.path.dirname(os.path.abspath(__file__))


class CosineSimilarityKMeans:
    """Upstream class (PBIP k_mean_cos_per_class.py), plus iteration bookkeeping."""

    def __init__(self, n_clusters, max_iter=100, random_state=None):
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.random_state = random_state
        np.random.seed(random_state)

    def fit_predict(self, X):
        n_samples = X.shape[0]
        idx = np.random.choice(n_samples, self.n_clusters, replace=False)
        self.init_idx = idx
        self.cluster_centers_ = X[idx]
        self.iterations = 0
        self.converged = False
        for _ in range(self.max_iter):
            self.iterations += 1
            similarities = cosine_similarity(X, self.cluster_centers_)
            new_labels = np.argmax(similarities, axis=1)
            old_centers = self.cluster_centers_.copy()
            for i in range(self.n_clusters):
                cluster_samples = X[new_labels == i]
                if len(cluster_samples) > 0:
                    self.cluster_centers_[i] = cluster_samples.mean(axis=0)
                    self.cluster_centers_[i] /= np.linalg.norm(self.cluster_centers_[i])
            if np.allclose(old_centers, self.cluster_centers_):
                self.converged = True
                break
        return new_labels, similarities, self.cluster_centers_


def bits(values):
    """Exact IEEE-754 bit patterns as hex strings (JSON float parsing may be off by one ulp)."""
    return ["%016x" % struct.unpack("<Q", struct.pack("<d", float(v)))[0] for v in values]


def rng_cases():
    out = []
    for n, k, seed in [
        (10, 3, 42),
        (60, 5, 42),
        (7, 7, 0),
        (1, 1, 42),
        (100, 4, 1),
        (1000, 10, 123456789),
        (257, 3, 4294967295),
        (33, 1, 2024),
        (5000, 6, 42),
    ]:
        np.random.seed(seed)
        choice = np.random.choice(n, k, replace=False).tolist()
        np.random.seed(seed)
        perm = np.random.permutation(n).tolist()
        np.random.seed(seed)
        samples = np.random.random_sample(5).tolist()
        out.append(
            {"n": n, "k": k, "seed": seed, "choice": choice,
             "permutation": perm if n <= 300 else perm[:50], "random_sample": samples,
             "random_sample_bits": bits(samples)}
        )
    # several consecutive choice calls after one seed (used for n_init restarts)
    np.random.seed(42)
    consecutive = [np.random.choice(50, 4, replace=False).tolist() for _ in range(3)]
    arrays = []
    for key in ([1, 2, 3], [0], [4294967295, 7], list(range(700))):
        np.random.seed(key)
        samples = np.random.random_sample(3).tolist()
        arrays.append({"key": key, "random_sample": samples, "random_sample_bits": bits(samples)})
    return out, consecutive, arrays


def kmeans_case(name, data_seed, n, d, k, random_state, planted=None, duplicate_init=False):
    rng = np.random.default_rng(data_seed)
    if planted:
        dirs = rng.normal(size=(planted, d))
        lab = rng.integers(0, planted, n)
        X = dirs[lab] + 0.35 * rng.normal(size=(n, d))
    else:
        X = rng.normal(size=(n, d)) + 0.5
    if duplicate_init:
        np.random.seed(random_state)
        idx = np.random.choice(n, k, replace=False)
        X[idx[1]] = X[idx[0]] * 2.0  # same direction: the second centre starts as a duplicate
    raw = X.copy()
    # upstream normalises before clustering
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    km = CosineSimilarityKMeans(n_clusters=k, random_state=random_state)
    labels, _, centres = km.fit_predict(Xn)
    sizes = np.bincount(labels, minlength=k)
    return {
        "name": name,
        "n": n,
        "dim": d,
        "k": k,
        "seed": random_state,
        "features": raw.ravel().tolist(),
        "init_idx": km.init_idx.tolist(),
        "centres": centres.ravel().tolist(),
        "labels": labels.tolist(),
        "iterations": km.iterations,
        "converged": km.converged,
        "had_empty_cluster_at_end": bool((sizes == 0).any()),
    }


def main():
    rng_out, consecutive, arrays = rng_cases()
    cases = [
        kmeans_case("planted_k3", 1, 60, 8, 3, 42, planted=3),
        kmeans_case("random_k4", 2, 40, 16, 4, 42),
        kmeans_case("random_k5_seed7", 3, 50, 6, 5, 7),
        kmeans_case("duplicate_init_k3", 4, 30, 5, 3, 42, duplicate_init=True),
        kmeans_case("planted_k2_seed0", 5, 25, 4, 2, 0, planted=2),
    ]
    doc = {
        "generator": "make_expected.py",
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": sys.version.split()[0],
        "rng": rng_out,
        "consecutive_choice_seed42_n50_k4": consecutive,
        "array_seeds": arrays,
        "kmeans": cases,
    }
    with open(os.path.join(HERE, "expected_kmeans.json"), "w") as f:
        json.dump(doc, f, indent=0)


if __name__ == "__main__":
    main()
