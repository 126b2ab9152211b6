"""wav2vec 2.0 end to end: our own PyTorch network, checkpoint loading, transcription, alignment."""

from .align import align
from .audio import load_audio
from .checkpoints import load_model
from .errors import AudioError, CheckpointError, Wav2Vec2Error
from .model import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model

__version__ = "0.1.0"
__all__ = ["load_model", "load_audio", "align", "Wav2Vec2Config", "Wav2Vec2Model", "Wav2Vec2ForCTC",
           "Wav2Vec2Error", "AudioError", "CheckpointError", "__version__"]
