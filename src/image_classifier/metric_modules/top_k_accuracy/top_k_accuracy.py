"""Top-k accuracy: the reference is among the k highest scores (scikit-learn), as a local `evaluate` module so it loads with no network."""

import datasets
import evaluate

from sklearn.metrics import top_k_accuracy_score


class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Top-k accuracy: the fraction of samples whose reference is among the k highest scores.",
            citation="", inputs_description="predictions: per-class scores (N, K); references: class ids; k; labels",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.top_k_accuracy_score.html"],
        )

    def _compute(self, predictions, references, k=5, labels=None):
        return {"top_k_accuracy": float(top_k_accuracy_score(references, predictions, k=k, labels=labels))}
