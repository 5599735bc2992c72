"""Recall per class or averaged (macro, weighted, micro; never binary by accident) (scikit-learn), as a local `evaluate` module so it loads with no network."""

import datasets
import evaluate

from sklearn.metrics import recall_score


class Recall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Recall of class predictions; pass average='macro'|'weighted'|'micro'|None (per class).",
            citation="", inputs_description="predictions, references: class ids; labels; average; zero_division",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.recall_score.html"],
        )

    def _compute(self, predictions, references, labels=None, average="macro", sample_weight=None, zero_division=0):
        score = recall_score(references, predictions, labels=labels, average=average, sample_weight=sample_weight,
                        zero_division=zero_division)
        return {"recall": score.tolist() if average is None else float(score)}
