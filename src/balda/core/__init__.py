"""The bottom layer every other part of balda may use, and which uses none of them: errors,
distributed helpers, atomic writes, shared types, registries and progress bars."""
