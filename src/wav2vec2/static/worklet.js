// The audio thread: collect the microphone's samples into blocks of `blockSize` frames (about
// 0.1 s) and post each, with its peak level, to the page. Nothing else runs here.
class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.blockSize;
    this.block = new Float32Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let sample = 0;
      for (const channel of channels) sample += channel[i];
      this.block[this.filled++] = sample / channels.length;  // mono: the mean of the channels
      if (this.filled === this.size) {
        let peak = 0;
        for (const value of this.block) peak = Math.max(peak, Math.abs(value));
        this.port.postMessage({samples: this.block, peak}, [this.block.buffer]);
        this.block = new Float32Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("capture", Capture);
