"""Long-CLIP training (`longclip train`, `cache-features`, `eval`), one job per module.

config.py          the settings of a run (`TrainConfig`) and the `train` arguments
model.py           the open_clip model a run trains (or its text tower alone), stretched, as one training forward
data.py            annotation files, tar shards and images, as training samples (archives.py: packed images)
loss.py            the Long-CLIP loss: fine-grained alignment and primary component matching
train.py           a run: its plan (checked before anything is built), its batches and the training loop
run_folder.py      what a run writes in --output: settings, metrics, plot, the final model
checkpoints.py     checkpoints/step_N, complete or absent, checked before resuming
feature_cache.py   the image-feature cache's format, and the checks a text-only run makes on it
cache_features.py  computing that cache (`cache-features`)
evaluate.py        retrieval and zero-shot evaluation (`eval`): eval_sets.py, metrics.py, report.py
"""
