/* libouter.so.1: needs libinner.so.1 and carries no search path of its own. */
int inner(void);

int outer(void) {
    return inner() + 1;
}
