from pathlib import Path

from experiments.layout import predictions_csv


def test_predictions_are_named_so_that_two_datasets_models_never_share_a_csv(tmp_path):
    fit_model = tmp_path / "artifacts/models/ants-1a2b3c4d-efficientnet_lite0-svm.joblib"
    assert predictions_csv(fit_model) == Path("artifacts/predictions/ants-1a2b3c4d-efficientnet_lite0-svm.csv")
    finetuned = tmp_path / "artifacts/finetune/ants-1a2b3c4d-resnet18/model.joblib"
    assert predictions_csv(finetuned, "o") == Path("o/predictions/ants-1a2b3c4d-resnet18.csv")
    # compare names its kept heads by backbone and head only: the report's folder says which dataset
    kept = [tmp_path / f"artifacts/reports/{d}-efficientnet_lite0/models/efficientnet_lite0-svm.joblib" for d in "ab"]
    assert predictions_csv(kept[0]) != predictions_csv(kept[1])
    assert predictions_csv(kept[0]).name == "a-efficientnet_lite0-efficientnet_lite0-svm.csv"
