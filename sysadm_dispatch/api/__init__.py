"""The RPC handlers every transport shares, and the envelope they speak."""
