/* libinner.so.1: a leaf library. */
int inner(void) {
    return 41;
}
