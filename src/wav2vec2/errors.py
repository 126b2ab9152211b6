"""The exceptions the library raises; the CLI turns each into a one-line message and an exit code."""


class Wav2Vec2Error(Exception):
    """Base class: anything a user can cause and fix (bad input, bad checkpoint, bad settings)."""


class AudioError(Wav2Vec2Error):
    """An audio file is missing, unreadable, empty or otherwise unusable."""


class CheckpointError(Wav2Vec2Error):
    """A model cannot be found, downloaded or loaded."""


class DataError(Wav2Vec2Error):
    """A manifest, data folder or transcript is missing, malformed or unusable."""


class MicrophoneError(Wav2Vec2Error):
    """No microphone, a device that cannot be opened as asked, or PortAudio missing."""


class LanguageModelError(Wav2Vec2Error):
    """A language model file is missing, malformed or needs a module that is not installed, or the
    text to estimate one from is unusable."""
