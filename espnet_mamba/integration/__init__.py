"""Everything that touches ESPnet's own machinery: the import hook that ``espnet_mamba_hook.pth``
turns on (``import_hook``), registration into the tasks' class choices (``registration``, with
the tables in ``names``), the checkpoint guard, the fixes to ESPnet functions (``pad_mask``,
``stft``, ``nonfinite_batches``: names the utterances of a training batch with NaN/inf input),
the advice for a config written for ESPnet's own classes (``espnet_options``) and the install
check.  ``ESPNET_MAMBA_DISABLE_HOOK=1`` leaves all of ESPnet as it is.
"""
