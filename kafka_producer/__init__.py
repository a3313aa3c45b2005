"""Synthetic user-behaviour events and user profiles for the `user_events` / `user_profiles` topics."""
