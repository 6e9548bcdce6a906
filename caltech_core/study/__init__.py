"""The study: presets and their numbers, verdicts, the report, figure builders."""
