"""llm-course's tested reference code: the notebooks build each idea, then import it from here.

Importing the package is cheap on purpose; each topic lives in its own module
(``course_lib.runtime``, ``course_lib.autograd``, ...) and is imported where it is used.
"""

__version__ = "0.1.0"
