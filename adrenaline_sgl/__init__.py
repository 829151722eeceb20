"""adrenaline_sgl: Adrenaline attention offloading on top of SGLang's PD disaggregation."""

__version__ = "0.1.0"
