"""Language profiles (lang_profiles/*.yaml: scripts, reference text) and resolving a user's language label to one."""
