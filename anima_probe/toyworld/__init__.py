"""Toy world: procedural images with known ground-truth factors (artist, content, quality, resolution).

It answers "does the tiny model organism learn the factors we planted?": `world` draws and captions the images,
`scorer` measures planted quality without weights from any real model, and `classifier` recognises artist and
content from pixels so a model's samples can be checked against the prompt that made them. `train` trains the tiny
model; `positive_control` is the variant whose quality is carried by a pooled modulation path by construction, so
the guidance experiments can show they detect a gain where one exists.
"""
