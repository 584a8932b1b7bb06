"""Long-CLIP training (`longclip train`, `cache-features`, `eval`), one job per module.

config.py          the settings of a run (`TrainConfig`) and the `train` arguments
model.py           the open_clip model a run trains (or its text tower alone), stretched, as one training forward
text_files.py      JSON lines, CSV and JSON files read a line or a chunk at a time, errors naming file:line
records.py         caption records from annotation files, in a compact table (archives.py: packed images)
images.py          a sample's image, and the samples a run could not use (`skipped_images.txt`)
samples.py         short captions, training samples from records, and batch collation
tar_shards.py      webdataset tar shards streamed a sample at a time, resumable
loss.py            the Long-CLIP loss: fine-grained alignment and primary component matching
train.py           a run: its plan (checked before anything is built), its batches and the training loop
run_folder.py      what a run writes in --output: settings, metrics, plot, the final model
checkpoints.py     checkpoints/step_N, complete or absent, checked before resuming
feature_cache.py   the image-feature cache's format, and the checks a text-only run makes on it
cache_features.py  computing that cache (`cache-features`)
eval_models.py     a model under evaluation: loading it, encoding images and captions, zero-shot accuracy
evaluate.py        every model on every benchmark (`eval`): eval_sets.py, eval_models.py, metrics.py, report.py
eval_command.py    the `eval` command line: its arguments, models and benchmarks
"""
