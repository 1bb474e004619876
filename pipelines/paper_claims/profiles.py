"""Profiles of the paper-claims pipeline: ``tiny`` (the smoke test's fixture corpus),
``quick`` (a couple of minutes) and ``full`` (the issue's sizes, ~35 minutes on 2 cores)."""

from __future__ import annotations

import dataclasses

FULL_TRAIN = ["foldoc-jargon-devil.txt.gz", "gcide-00.txt.gz", "gcide-01.txt.gz",
              "wordnet-00.txt.gz", "wordnet-01.txt.gz", "bible-asv.txt.gz", "bible-web.txt.gz",
              "bible-ylt.txt.gz", "bible-bbe.txt.gz"]


@dataclasses.dataclass
class Profile:
    """Sizes and budgets; ``seconds`` is the training budget of each arm of item 1."""

    name: str
    vocab_sizes: tuple
    radii: tuple
    train_sources: list
    calibration_source: str = "perl-doc.txt.gz"
    test_source: str = "python-doc.txt.gz"
    test_tokens: int = 50_000
    calibration_bytes: int = 1 << 20
    tokenizer_sample_bytes: int = 16 << 20
    seconds: float = 60.0
    tune_fraction: float = 1 / 6
    lrs: tuple = (0.03, 0.01, 0.003)
    weight_decays: tuple = (0.0, 0.01)
    warm_lrs: tuple = (1e-3, 1e-4)
    patience: int = 4
    evaluations: int = 8
    batch: int = 4096
    lbfgs_positions: int = 262144
    kl_contexts: int = 2048
    dense_max_bytes: int = 300 << 20
    factored_rank: int = 512
    two_layer_vocab: int = 1024
    two_layer_radius: int = 3
    two_layer_positions: int = 200_000
    two_layer_epochs: int = 3
    two_layer_lrs: tuple = (0.01, 0.001)
    low_rank_vocab: int = 4096
    ranks: tuple = (64, 128, 256, 512, 1024)
    low_rank_seconds: float = 20.0
    low_rank_lr: float = 1e-3
    classifier_samples: int = 5000
    classifier_passes: int = 300
    threads: int = 2
    min_train_tokens: int = 10_000_000

    def planned_seconds(self) -> dict:
        """Rough wall seconds per item, printed before anything runs: training budgets with
        the held-out evaluations on top (x1.3 for tuning runs, x1.6 for the arms), store
        builds, and ``prep`` (tokenizers, reading the corpus). Calibrated on the quick
        profile and on single-step timings of the full sizes (2 cores, shared machine)."""
        tune = self.seconds * self.tune_fraction
        n_tune = len(self.lrs) * len(self.weight_decays) + len(self.warm_lrs)
        build = 60.0 if self.name == "full" else 5.0
        per_config = 1.3 * n_tune * tune + 1.6 * 3 * self.seconds + build
        configs = len(self.vocab_sizes) * len(self.radii)
        return {"prep": 300 if self.name == "full" else 10,
                "1-2": round(configs * per_config),
                "3": round(12 * self.two_layer_epochs * len(self.two_layer_lrs)
                           * self.two_layer_positions / 2e5 + build),
                "4": round(len(self.ranks) * (1.5 * self.low_rank_seconds + 15)),
                "5": 120 if self.name == "full" else 20}


PROFILES = {
    "tiny": Profile("tiny", (300,), (1, 2), ["train-0.txt.gz", "train-1.txt.gz"],
                    calibration_source="calibration.txt.gz", test_source="test.txt.gz",
                    test_tokens=3000, calibration_bytes=1 << 20, tokenizer_sample_bytes=1 << 20,
                    seconds=1.5,
                    tune_fraction=0.34, lrs=(0.03,), weight_decays=(0.0, 0.01),
                    warm_lrs=(1e-3,), evaluations=3, batch=512, lbfgs_positions=2048,
                    kl_contexts=256, factored_rank=16, dense_max_bytes=500_000,
                    two_layer_vocab=300, two_layer_radius=1, two_layer_positions=2000,
                    two_layer_epochs=2, two_layer_lrs=(0.01,), low_rank_vocab=300,
                    ranks=(4, 16), low_rank_seconds=0.6, classifier_samples=400,
                    classifier_passes=20, threads=1, min_train_tokens=0),
    "quick": Profile("quick", (512,), (1, 3),
                     ["bible-bwe.txt.gz", "bible-diaglot.txt.gz", "bible-lont.txt.gz"],
                     test_tokens=20_000, calibration_bytes=256 << 10,
                     tokenizer_sample_bytes=2 << 20, seconds=6.0,
                     tune_fraction=0.25, lrs=(0.03, 0.01), warm_lrs=(1e-3, 1e-4),
                     evaluations=4, batch=2048, lbfgs_positions=65536, kl_contexts=1024,
                     factored_rank=64, dense_max_bytes=2 << 20, two_layer_vocab=384,
                     two_layer_positions=20_000, two_layer_epochs=2, low_rank_vocab=512,
                     ranks=(16, 64, 256), low_rank_seconds=3.0, classifier_samples=1500,
                     classifier_passes=100, threads=1, min_train_tokens=0),
    "full": Profile("full", (4096, 8192), (1, 3), FULL_TRAIN, test_tokens=30_000, seconds=45.0,
                    tune_fraction=0.2, evaluations=6, low_rank_seconds=15.0),
}
