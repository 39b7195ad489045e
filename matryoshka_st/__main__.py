import sys

from matryoshka_st.cli import main

sys.exit(main())
