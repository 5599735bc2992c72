"""Confusion matrix: rows are references, columns predictions (scikit-learn), as a local `evaluate` module so it loads with no network."""

import datasets
import evaluate

from sklearn.metrics import confusion_matrix


class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Confusion matrix: entry [i][j] counts samples of class i predicted as class j.",
            citation="", inputs_description="predictions, references: class ids; labels; sample_weight; normalize",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html"],
        )

    def _compute(self, predictions, references, labels=None, sample_weight=None, normalize=None):
        return {"confusion_matrix": confusion_matrix(references, predictions, labels=labels,
                                                     sample_weight=sample_weight, normalize=normalize).tolist()}
