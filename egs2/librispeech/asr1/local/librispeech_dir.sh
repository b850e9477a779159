# shellcheck shell=bash
# librispeech_dir ROOT: the directory that holds the corpus parts (train-clean-100, dev-clean, ...).
# ROOT is what ESPnet's db.sh calls LIBRISPEECH: the parts are in ROOT/LibriSpeech/ as the
# corpus unpacks; ROOT may also be that LibriSpeech directory itself.
librispeech_dir() {
    if [ -d "$1/LibriSpeech" ]; then
        echo "$1/LibriSpeech"
    else
        echo "$1"
    fi
}
