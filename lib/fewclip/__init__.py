"""fewclip: efficient transfer learning of CLIP-like models, one protocol for four papers."""

__version__ = "0.1.0"
