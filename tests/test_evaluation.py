"""A version's figures on a labelled set (imageclf.models.evaluation) against figures worked out by hand, and matching a
dataset's folders and CSV labels to the model's classes (imageclf.models.labelled_sets)."""

from __future__ import annotations

import pytest

from imageclf.models.evaluation import Evaluation, Prediction, agreement
from imageclf.models.labelled_sets import LabelledSetError, csv_labels, folder_labels
from imageclf.workers.jobs.results import evaluation_result

LABELS = ["A", "B", "C", "D"]
A, B, C = 0, 1, 2
#: Class B is always got wrong, C is never predicted, D has no images.
PREDICTIONS = [
    Prediction("a1.jpg", A, ((A, 0.9), (B, 0.1))),
    Prediction("a2.jpg", A, ((A, 0.8), (C, 0.2))),
    Prediction("a3.jpg", A, ((B, 0.6), (A, 0.4))),
    Prediction("b1.jpg", B, ((A, 0.7), (B, 0.3))),
    Prediction("b2.jpg", B, ((A, 0.55), (C, 0.45))),
    Prediction("c1.jpg", C, ((A, 0.95), (B, 0.05))),
]


def figures() -> dict:
    evaluation = Evaluation(LABELS)
    for prediction in PREDICTIONS:
        evaluation.add(prediction)
    return evaluation.result()


def test_accuracy_top5_and_calibration_as_worked_out_by_hand():
    result = figures()
    assert result["images"] == 6
    assert result["accuracy"] == pytest.approx(2 / 6) and result["top5_accuracy"] == pytest.approx(4 / 6)
    # One image per confidence bin: sum of |accuracy - confidence| = .1 + .2 + .6 + .7 + .55 + .95, over 6 images.
    assert result["expected_calibration_error"] == pytest.approx(3.1 / 6)


def test_per_class_figures_never_divide_by_zero():
    classes = figures()["per_class"]
    assert classes["A"] == {"class_id": 0, "support": 3, "predicted": 5, "precision": pytest.approx(0.4),
                            "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.5)}
    assert (classes["B"]["precision"], classes["B"]["recall"], classes["B"]["f1"]) == (0.0, 0.0, 0.0)
    assert (classes["C"]["support"], classes["C"]["precision"], classes["C"]["recall"], classes["C"]["f1"]) == (
        1, None, 0.0, None)
    assert (classes["D"]["support"], classes["D"]["precision"], classes["D"]["recall"]) == (0, None, None)
    assert figures()["classes_without_images"] == ["D"]


def test_the_confusion_matrix_covers_the_classes_that_occur_and_lists_the_mistakes():
    result = figures()
    assert result["confusion"] == {"classes": ["A", "B", "C"], "matrix": [[2, 1, 0], [2, 0, 0], [1, 0, 0]]}
    assert [w["file"] for w in result["wrong"]] == ["a3.jpg", "b1.jpg", "b2.jpg", "c1.jpg"]
    assert result["wrong"][0] == {"file": "a3.jpg", "true": "A", "predicted": "B", "probability": 0.6}


def test_an_empty_evaluation_reports_nothing_instead_of_dividing_by_zero():
    result = Evaluation(LABELS).result()
    assert (result["images"], result["accuracy"], result["expected_calibration_error"]) == (0, None, None)
    assert result["classes_without_images"] == LABELS


def test_two_versions_agree_and_disagree_grouped_by_which_was_right():
    first = {p.file: p for p in PREDICTIONS}
    second = {p.file: Prediction(p.file, p.label, ((p.label, 0.9),)) if p.file in ("b1.jpg", "a3.jpg") else p
              for p in PREDICTIONS}
    second["a1.jpg"] = Prediction("a1.jpg", A, ((C, 0.5),))
    second["c1.jpg"] = Prediction("c1.jpg", C, ((B, 0.5),))
    compared = agreement(first, second)
    assert compared["images"] == 6 and compared["top1_agreement"] == pytest.approx(2 / 6)
    assert compared["disagreements"] == {"first_right": ["a1.jpg"], "second_right": ["a3.jpg", "b1.jpg"],
                                         "neither_right": ["c1.jpg"]}


def test_imagefolder_folders_give_the_class_by_name_or_id_and_the_rest_is_refused():
    paths = ["A/1.jpg", "set/B/2.png", "2/3.jpg", "photos/D/4.jpg"]
    assert folder_labels(paths, LABELS) == [0, 1, 2, 3]
    with pytest.raises(LabelledSetError, match=r"folder name\(s\) 'E', 'dogs' match no class"):
        folder_labels(["A/1.jpg", "E/2.jpg", "x/dogs/3.jpg"], LABELS)
    with pytest.raises(LabelledSetError, match="files without a label: 'loose.jpg'"):
        folder_labels(["A/1.jpg", "loose.jpg"], LABELS)


def test_a_labels_csv_names_images_by_path_or_file_name():
    text = "file,label\nzip/a1.jpg,A\nb1.jpg,1\nc1.jpg, C \n"
    assert csv_labels(text, ["zip/a1.jpg", "other/b1.jpg", "c1.jpg"], LABELS) == [0, 1, 2]
    with pytest.raises(LabelledSetError, match="files without a label: 'd1.jpg'"):
        csv_labels(text, ["c1.jpg", "d1.jpg"], LABELS)
    with pytest.raises(LabelledSetError, match=r"label\(s\) 'cat' in the 'labels' CSV match no class"):
        csv_labels("file,label\na.jpg,cat\n", ["a.jpg"], LABELS)
    with pytest.raises(LabelledSetError, match="header with the columns file,label"):
        csv_labels("a.jpg;A\n", ["a.jpg"], LABELS)


def test_a_name_that_several_classes_share_needs_its_class_id():
    labels = ["x", "crane", "crane"]  # as in ImageNet: the bird and the machine
    assert folder_labels(["2/a.jpg", "x/b.jpg"], labels) == [2, 0]
    with pytest.raises(LabelledSetError, match=r"'crane' match no class .*the id for a name several classes share"):
        folder_labels(["crane/a.jpg"], labels)
    evaluation = Evaluation(labels)
    evaluation.add(Prediction("a.jpg", 2, ((1, 0.6),)))
    assert set(evaluation.result()["per_class"]) == {"x", "crane (1)", "crane (2)"}


def test_a_heatmap_past_50_classes_adds_the_quietest_up_as_other():
    from imageclf.models.confusion_plot import aggregate, confusion_png

    classes = [f"c{i}" for i in range(60)]
    matrix = [[(i + j) % 3 + (50 if i == j and i < 10 else 0) for j in range(60)] for i in range(60)]
    kept, out = aggregate(classes, matrix)
    assert len(kept) == 50 and kept[-1] == "other" and all(f"c{i}" in kept for i in range(10))
    assert sum(map(sum, out)) == sum(map(sum, matrix)) and len(out) == 50 and all(len(row) == 50 for row in out)
    assert confusion_png({"classes": classes, "matrix": matrix}, "t").startswith(b"\x89PNG")


def test_lists_keep_their_first_entries_and_the_counts_stay_whole():
    evaluation = Evaluation(LABELS, listed=2)
    for prediction in PREDICTIONS:
        evaluation.add(prediction)
    result = evaluation.result()
    assert [w["file"] for w in result["wrong"]] == ["a3.jpg", "b1.jpg"] and result["wrong_count"] == 4
    assert result["accuracy"] == figures()["accuracy"]


def test_a_job_result_is_folded_image_by_image_with_its_csv_rows_in_pages():
    """Two versions, image by image (as the job lists them): v2 gets b1 right where v1 did not, and v2 cannot
    classify c1; the CSV rows come out in pages of two images."""
    entries = []
    for image, p in enumerate(PREDICTIONS):
        second = ((B, 0.9),) if p.file == "b1.jpg" else p.top
        for version, top in ((1, p.top), (2, second)):
            item = {"image": image, "name": p.file, "label": p.label, "version": version}
            outcome = ({"status": "FAILURE", "error": "cannot decode"} if (p.file, version) == ("c1.jpg", 2) else
                       {"status": "SUCCESS", "top": [list(pair) for pair in top]})
            entries.append((item, outcome))
    pages: list[list] = []
    result = evaluation_result(iter(entries), LABELS, [1, 2], listed=1, write_rows=pages.append, page=4)
    assert [len(page) for page in pages] == [4, 4, 3]
    assert pages[0][0] == ["a1.jpg", 1, "A", "A", 0.9]
    assert [row[:2] for page in pages for row in page][:4] == [["a1.jpg", 1], ["a1.jpg", 2], ["a2.jpg", 1],
                                                               ["a2.jpg", 2]]
    assert result["versions"]["1"] == figures() | {"wrong": figures()["wrong"][:1]}
    assert result["versions"]["2"]["images"] == 5 and result["versions"]["2"]["wrong_count"] == 2
    assert result["failed"] == [{"name": "c1.jpg", "version": 2, "error": "cannot decode"}]
    assert result["failed_count"] == 1
    compared = result["agreement"]["1-2"]
    assert compared["images"] == 5 and compared["top1_agreement"] == pytest.approx(4 / 5)
    assert compared["disagreement_counts"] == {"first_right": 0, "second_right": 1, "neither_right": 0}
    assert compared["disagreements"]["second_right"] == ["b1.jpg"]
