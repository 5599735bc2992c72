"""Precision per class or averaged (macro, weighted, micro; never binary by accident) (scikit-learn), as a local `evaluate` module so it loads with no network."""

import datasets
import evaluate

from sklearn.metrics import precision_score


class Precision(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Precision of class predictions; pass average='macro'|'weighted'|'micro'|None (per class).",
            citation="", inputs_description="predictions, references: class ids; labels; average; zero_division",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_score.html"],
        )

    def _compute(self, predictions, references, labels=None, average="macro", sample_weight=None, zero_division=0):
        score = precision_score(references, predictions, labels=labels, average=average, sample_weight=sample_weight,
                        zero_division=zero_division)
        return {"precision": score.tolist() if average is None else float(score)}
