"""The trust core: keys, DSSE envelopes, root metadata, release manifests, verification.

Pure: bytes and a reference time in, verified objects or one `signing.errors.TrustError`
subclass out. No network, no clock reads, no prints.
"""
