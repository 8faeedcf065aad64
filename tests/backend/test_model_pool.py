"""The model pool: each project gets the version deployed for it, each source is loaded once, and only the
most recently used few stay in memory."""

from __future__ import annotations

from dataclasses import replace

from active_learning.serving.pool import ModelPool

from tests.support.backend import deploy_copy


def test_each_project_gets_its_version_and_the_least_recently_used_model_goes(settings, store, detector,
                                                                             small_model_dir, model_version):
    settings = replace(settings, loaded_models=2)
    pool = ModelPool(settings, store, starting=detector)
    deploy_copy(settings, store, small_model_dir, 1, "groundloop-p1-r1")
    deploy_copy(settings, store, small_model_dir, 2, "groundloop-p2-r1")

    one = pool.model_for(1)
    assert one.version == pool.version_for(1) == "groundloop-p1-r1"
    assert pool.model_for(1) is one  # loaded once
    assert pool.model_for(3).detector is detector and pool.version_for(3) == model_version  # nothing deployed

    assert pool.model_for(2).version == "groundloop-p2-r1"  # three models wanted, two kept: project 1's goes
    assert pool.model_for(1) is not one
    assert pool.version_for(None) == model_version  # known without reloading the starting model


def test_a_version_registered_on_one_machine_loads_on_another_mounting_the_data_dir_elsewhere(
        settings, store, detector, small_model_dir, tmp_path):
    import shutil

    deploy_copy(settings, store, small_model_dir, 1, "groundloop-p1-r1")
    assert store.models.get("groundloop-p1-r1").path == "models/groundloop-p1-r1"  # relative to the data dir

    elsewhere = tmp_path / "mounted-elsewhere"
    shutil.copytree(settings.models_dir, elsewhere / "models")
    shutil.rmtree(settings.models_dir)  # only the other mount has the weights now
    other = replace(settings, data_dir=elsewhere)
    model = ModelPool(other, store, starting=detector).model_for(1)
    assert model.version == "groundloop-p1-r1" and model.detector.source == str(elsewhere / "models/groundloop-p1-r1")
