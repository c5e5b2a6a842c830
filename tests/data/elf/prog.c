/* A program that needs libouter.so.1 (and, through it, libinner.so.1). */
int outer(void);

int main(void) {
    return outer() == 42 ? 0 : 1;
}
