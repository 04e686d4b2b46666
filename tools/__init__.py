"""The tools around the model (they do not travel with the weights): the `vistr` command (`cli`),
YouTube-VIS folders and the synthetic data generator (`youtube_vis`), training clips and augmentation
(`training_data`), the official evaluator's metric (`evaluation_youtube_vis`), whole-split inference
(`youtube_vis_inference`), overlay drawing (`overlay`) and publishing a model folder: its card, processor and
pipeline, and the upload to the Hub (`model_card`)."""
