"""The logic behind ``python -m sam3.predict`` (:mod:`sam3.predict` parses the command line).

* :mod:`.inputs`: the photo, the checkpoint, the device and the mask encoder, checked before the
  model loads; :class:`~.inputs.PredictError` and the ``error:`` line of a user's mistake;
* :mod:`.prompts`: the prompt of the command line, checked against the photo;
* :mod:`.detect` and :mod:`.interactive`: one run of the detector (text and example boxes) or of
  the interactive heads (clicks and boxes);
* :mod:`.outputs`: the output folder, the JSON file (masks as COCO RLE), the overlay PNG and the
  printed summary;
* :mod:`.run`: all of it in order, for one command line.
"""
