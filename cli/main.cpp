#include <cstdio>
int main(int argc, char** argv) {
  std::printf("galvatron\n");
  return 0;
}
