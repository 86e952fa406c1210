"""Modulation guidance: the sources (families), where their vectors enter, samplers, the guided sampler and the dose-response."""
