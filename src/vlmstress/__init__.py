"""vlmstress: stress-test the reasoning of vision-language models and train them to stay honest."""

__version__ = "0.1.0"
